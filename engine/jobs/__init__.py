"""Jobs: the persistent queue, the local worker and its process, what each job does (runners), the Ray cluster."""
