import os

# Every pass's verifier runs in tests.
os.environ.setdefault("DLC_VERIFY", "1")
