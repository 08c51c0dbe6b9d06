"""Code of the fresh TensorFlow process that each Spark task starts (``python -m sparkeras.worker``).

Nothing outside this package imports it: TensorFlow must be configured for collectives before its
first op, which is only possible in a process that has not run TensorFlow yet.
"""
