"""The Jupyter server's side: the only wing that imports tornado and jupyter_server (with the broker's daemon
and metrics). ``extension`` wires it, ``provisioner`` runs the jupyter_client lifecycle on an engine, ``handlers``
serve REST, ``refusals`` turn errors into HTTP answers, ``reports`` say what GET kernels shows, ``terminals``,
``parking``, ``usage`` and ``warm`` fit their wings to one server."""
