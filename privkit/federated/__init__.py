"""Federated learning across hospitals that keep their data: sites, FedAvg and cyclic
training with sample-level DP at each site and site-level DP at the server, secure
aggregation, and (optional extra ``privkit[flower]``) Flower for real deployments."""
