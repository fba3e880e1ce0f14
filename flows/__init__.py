"""The application: one runner per stage (stages/), the work folder (workdir.py), the project store (store.py), and
the front ends that call the runners: the ``gill`` command (command/), the demo and the Prefect flows (see
docs/architecture.md)."""
