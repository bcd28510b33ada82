"""tangle"""
