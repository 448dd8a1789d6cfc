"""Kubernetes metadata: informers on the API server, pid -> container -> pod metadata."""
