"""The Docker adapter: the only code that imports the docker SDK (with ``engines/swarm``). ``engine`` builds and
runs containers in bounded thread pools with time limits, translating the SDK's errors in one place; ``exec`` is
a terminal's shell in a container."""
