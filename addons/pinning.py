"""mitmdump entry: `mitmdump -s addons/pinning.py --set pinset=config/pins.yaml`.

Prefer `pinproxy run`, which embeds the addon: mitmdump unloads a script whose reload fails
and keeps serving without it. Here a bad pinset is logged as one error line (mitmdump exits
on errors logged at start-up) and, later, leaves the previous pinset in force.
"""

import logging
import sys
from pathlib import Path

from mitmproxy import exceptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from pinproxy.addon import Pinning  # noqa: E402


class ScriptPinning(Pinning):
    def configure(self, updated: set[str]) -> None:
        try:
            super().configure(updated)
        except exceptions.OptionsError as e:
            logging.getLogger("pinproxy.addon").error("%s", e)


addons = [ScriptPinning()]
