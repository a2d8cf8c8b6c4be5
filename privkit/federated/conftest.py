"""pytest --doctest-modules: without the optional extra ``privkit[flower]``, skip ``flower.py``
(it needs ``flwr`` at import); its test says so too (tests/test_federated_flower.py)."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("flwr") else ["flower.py"]
