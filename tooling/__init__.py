"""Tooling around the product: the bench, the local servers, the demo, the worker fleet and fault injection. It imports the product; the product never imports it."""
