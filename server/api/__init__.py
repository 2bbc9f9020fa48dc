"""HTTP routers of the control plane: one module per resource, thin, calling services."""
