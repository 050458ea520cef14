"""Peer heartbeats: who is in mutual contact, quorum, and evidence for self-fencing."""
