"""mitmdump entry: `mitmdump -s addons/pinning.py --set pinset=config/pins.yaml`.

Prefer `pinproxy run`, which embeds the addon. mitmdump serves on without a script that failed
to (re)load; the addon then stops the proxy instead (see `Pinning.done`). A bad pinset is
logged as one error line: mitmdump exits on errors logged at start-up, and later the previous
pinset stays in force.
"""

import logging
import sys
from pathlib import Path

from mitmproxy import exceptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from pinproxy.config import DEFAULT_PINSET
from pinproxy.proxy.addon import Pinning


class ScriptPinning(Pinning):
    """Logs a bad option as one line: mitmdump would print a traceback for the exception.

    Without `--set pinset=...` it reads config/pins.yaml, as `pinproxy run` does without
    `--pinset`; it never raises, so mitmproxy never rolls options back to that default.
    """

    pinset_default = DEFAULT_PINSET

    def configure(self, updated: set[str]) -> None:
        try:
            super().configure(updated)
        except exceptions.OptionsError as e:
            logging.getLogger("pinproxy.proxy.addon").error("%s", e)


addons = [ScriptPinning()]
