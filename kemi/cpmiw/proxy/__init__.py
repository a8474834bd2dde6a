"""The Kamailio adapter: the only code that imports KSR.

`handlers.Handlers` is the object app_python3 calls: one method per `python_exec()` name in
kamailio.cfg. Each concern has its module: reading a request (`facts`), routing it (`initial`),
carrying a decision out (`delivery`), the AS hand-off and its default handling (`handoff`),
REGISTER (`registrations`), the change watcher (`changes`) and the metrics listener (`http`).
"""
