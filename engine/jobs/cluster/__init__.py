"""The optional cluster: the worker's jobs run on Ray actors, one per GPU, on any number of GPU machines.

`FACECHAIN_RAY_ADDRESS` turns it on. The machine with the data folder runs the dispatcher
(engine/jobs/cluster/dispatcher.py): it claims jobs from the SQLite queue, gathers their inputs, sends
the model work to an actor (engine/jobs/cluster/actor.py) as bytes, and records what comes back. GPU
machines need the project installed and nothing else. Needs the `cluster` extra (`ray`).
"""
