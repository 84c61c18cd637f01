"""
Byte tunnels: L4 listeners splice each client connection to a target.
"""
