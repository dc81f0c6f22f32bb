"""Optional integrations (off by default): eigenda, lagrange, othentic, composio."""
