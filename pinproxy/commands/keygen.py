"""`pinproxy keygen`: a minisign key pair for signing pinsets (`pinproxy sign`, `minisign -S`).

The secret key is written unencrypted, as `minisign -G -W` writes it, for a CI secret store;
it is created with mode 0600 (never chmod-ed afterwards) and never overwrites a file unless
`--force`. `minisign -C -s KEY` adds a password to it; `pinproxy sign` reads both kinds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pinproxy import minisign
from pinproxy.errors import PinproxyError
from pinproxy.files import create_exclusively, replace_atomically

DEFAULT_PUBLIC = "minisign.pub"
DEFAULT_SECRET_KEY_FILE = "minisign.key"  # noqa: S105 - a file name, not a secret


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "keygen", help="generate a minisign key pair for signing pinsets",
        description="Generate an Ed25519 key pair in minisign's format: the public key for "
                    "'run --pinset-pubkey' (and 'minisign -V'), the secret key (unencrypted, "
                    "mode 0600) for 'pinproxy sign' (and 'minisign -S -W').")
    parser.add_argument("-p", "--public", default=DEFAULT_PUBLIC, metavar="PUBLIC",
                        help="public key file (default: %(default)s)")
    parser.add_argument("-s", "--secret", default=DEFAULT_SECRET_KEY_FILE, metavar="SECRET",
                        help="secret key file (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    parser.set_defaults(command=keygen)


def keygen(args: argparse.Namespace) -> int:
    public_path, secret_path = Path(args.public), Path(args.secret)
    if public_path.resolve() == secret_path.resolve():
        raise PinproxyError("the public and the secret key need two different files")
    if not args.force:
        for path in (secret_path, public_path):
            if path.exists() or path.is_symlink():
                raise PinproxyError(f"{path}: already exists; use --force to replace it")
    key = minisign.generate()
    secret = key.file_text().encode()
    public = key.public_key.file_text().encode()
    try:
        if args.force:
            replace_atomically(secret_path, secret, 0o600)
            replace_atomically(public_path, public, 0o644)
        else:
            create_exclusively(secret_path, secret, 0o600)
            create_exclusively(public_path, public, 0o644)
    except FileExistsError as e:
        raise PinproxyError(f"{e.filename}: already exists; use --force to replace it") from None
    except OSError as e:
        raise PinproxyError(f"{e.filename or secret_path}: cannot write: {e.strerror or e}") \
            from None
    print(f"public key ({key.id_text}): {public_path}\n  {key.public_key.text}\n"
          f"secret key: {secret_path} (keep it secret)\n"
          f"sign a pinset with: pinproxy sign PINSET --key {secret_path}\n"
          f"run with: pinproxy run --pinset-url URL --pinset-pubkey @{public_path}")
    return 0
