# Lambda packages for `sam build` (BuildMethod: makefile): the project's wheel and
# its runtime dependencies for arm64 (with the notifier's redis-py, for NotifyUrl),
# nothing of moto or the test tools. Wheels are chosen for the function's Python, so
# no local interpreter of that version is needed.
PYTHON_VERSION := 3.11
build-ManagedSubscribeFunction: PYTHON_VERSION := 3.13
LAMBDA_PLATFORM = --platform manylinux2014_aarch64 --implementation cp --python-version $(PYTHON_VERSION) --only-binary=:all:

build-SubscribeFunction build-PublishFunction build-ManagedSubscribeFunction:
	rm -rf "$(ARTIFACTS_DIR)/.wheel"
	python3 -m pip wheel --quiet --no-deps --wheel-dir "$(ARTIFACTS_DIR)/.wheel" .
	python3 -m pip install --quiet --no-compile $(LAMBDA_PLATFORM) --target "$(ARTIFACTS_DIR)" "$$(echo "$(ARTIFACTS_DIR)"/.wheel/*.whl)[notify]"
	rm -rf "$(ARTIFACTS_DIR)/.wheel" "$(ARTIFACTS_DIR)/bin"
	chmod +x "$(ARTIFACTS_DIR)/handlers/bootstrap"
