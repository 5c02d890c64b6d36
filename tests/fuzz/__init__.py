"""dlc's differential fuzzer, in the style of NNSmith: random well-typed `.dl`
programs (generate.py, over the fuzzer's own program form in ir.py), checked
against PyTorch (oracle.py) and metamorphic relations (checks.py), failures
delta-debugged to minimal reproducers (reduce.py).

    python -m tests.fuzz --minutes 10 [--seed S] [--out DIR]
    python -m pytest tests/fuzz            # a fixed sample of programs (CI)
"""
