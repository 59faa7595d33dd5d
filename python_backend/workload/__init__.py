"""Workload traces: Zipf users and items, Steady/Trend/Burst arrival shapes. The ground floor: it imports nothing of helmrec."""
