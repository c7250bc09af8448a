import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management.base import BaseCommand, CommandError

from governance import checkpoints


class Command(BaseCommand):
    help = (
        "Make a new Ed25519 key for signing audit checkpoints. Prints the private key (for AUDIT_SIGNING_KEY) "
        "and the public key an auditor verifies with; --private-key-file/--public-key-file write them instead."
    )

    def add_arguments(self, parser):
        parser.add_argument("--private-key-file", help="Write the private key (PEM) here, readable by its owner only.")
        parser.add_argument("--public-key-file", help="Write the public key (base64 line and PEM) here.")

    def handle(self, *args, **options):
        key = Ed25519PrivateKey.generate()
        public = key.public_key()
        public_text = (
            f"# audit checkpoint public key {checkpoints.key_id(public)}\n"
            f"{checkpoints.public_key_text(public)}\n{checkpoints.public_key_pem(public)}"
        )
        if options["private_key_file"]:
            path = Path(options["private_key_file"])
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError as exc:
                raise CommandError(f"--private-key-file: {path} exists; a key is never overwritten") from exc
            with os.fdopen(fd, "w") as f:
                f.write(checkpoints.private_key_pem(key))
            self.stdout.write(f"private key written to {path} (set AUDIT_SIGNING_KEY_FILE={path})")
        else:
            self.stdout.write(f"AUDIT_SIGNING_KEY={checkpoints.private_key_seed_text(key)}")
        if options["public_key_file"]:
            Path(options["public_key_file"]).write_text(public_text)
            self.stdout.write(f"public key written to {options['public_key_file']}")
        else:
            self.stdout.write(public_text)
        self.stdout.write(f"key id: {checkpoints.key_id(public)}")
