"""Environments: ``definition`` (the schema, pure), ``kernelspecs`` (the kernelspec stanza, written and read),
``preflight`` (can it start here now? one verdict from gathered facts, pure), ``runtime`` (kernel runtimes for
images without ipykernel)."""
