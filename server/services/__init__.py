"""Domain logic of the control plane; routers call these with keyword arguments."""
