# Developer shortcuts. The README's two commands are the supported way in; these wrap the same steps.
.PHONY: install export test check

install:            ## CPU torch, then the library with the dev extras
	pip install torch==2.13.0 && pip install -e ".[dev]"

export:             ## notebooks -> marco_lib/, clean notebooks, README from index.ipynb
	nbdev_export && nbdev_clean && nbdev_clean --fname nbs_tests && python tests/test_repo.py

test:               ## every test, exactly as CI runs them
	bash -c "$$(python tests/test_repo.py --test-command)"

check:              ## what CI does, from scratch
	bash .ci/run
