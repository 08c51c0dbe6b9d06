"""Code of the TensorFlow process that each Spark task runs (``python -m sparkeras.worker``).

Only the Spark side's process plumbing (``sparkeras.processes``) imports from here, and only the
modules that do not import TensorFlow (``task``, ``fork_server``): TensorFlow must be configured
for collectives before its first op, which is only possible in a process that has not run it.
"""
