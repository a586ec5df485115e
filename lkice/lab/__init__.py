"""The lab: real servers the agent can be pointed at, for ``lkice demo``, the tests and support
staff reproducing a customer's network. Everything listens on loopback or inside namespaces the
lab creates itself."""
