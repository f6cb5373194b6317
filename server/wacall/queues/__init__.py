"""Contact-centre routing: queues, agents, presence and offers (the pure router)."""
