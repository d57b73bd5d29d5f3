"""Serving: the load balancer and the replicas' readiness probes."""
