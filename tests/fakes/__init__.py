"""Fakes of cloud REST APIs, served over HTTP on loopback and driven by the real SDKs."""
