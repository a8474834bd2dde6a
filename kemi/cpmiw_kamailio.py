"""The script Kamailio's app_python3 loads (modparam "load"): finds the package, builds the router.

Kamailio embeds the system interpreter, so the plugin's dependencies come from the venv named by
CPMIW_VENV (default: .venv beside this folder), made with that same interpreter.
"""

import os
import site
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_VENV = os.environ.get("CPMIW_VENV", os.path.join(os.path.dirname(_HERE), ".venv"))
_PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"

sys.path.insert(0, _HERE)
site.addsitedir(os.path.join(_VENV, "lib", _PYTHON, "site-packages"))

from cpmiw.proxy.handlers import mod_init  # noqa: E402  (the paths above must be set first)

__all__ = ["mod_init"]
