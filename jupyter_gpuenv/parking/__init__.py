"""Park a kernel's GPU and keep its variables: ``checkpoint`` (the driver's checkpoint API; ``load_driver`` is the
seam tests replace), ``rules`` (what may be parked, the idle policy, whether a kernel may resume: pure),
``parker`` (park and resume with time limits, shared by a server and the broker), ``activity`` (a kernel's
IOPub), ``timeline`` (each phase's time)."""
