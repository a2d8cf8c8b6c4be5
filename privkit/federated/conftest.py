"""pytest --doctest-modules: without the optional extra ``privkit[flower]``, skip the modules
that need it at import (``flwr``, and ``cryptography`` which comes with it); their tests say so
too (tests/test_federated_flower.py, tests/test_federated_credentials.py)."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("flwr") else ["flower.py"]
collect_ignore += [] if importlib.util.find_spec("cryptography") else ["credentials.py"]
