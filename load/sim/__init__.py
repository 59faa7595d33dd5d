"""The cluster simulator: N simulated nodes driven by the real router and controller code."""
