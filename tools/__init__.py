"""Tools around the service: the synthetic district generator (`casebridge generate`)."""
