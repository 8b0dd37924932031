"""Table definition and local provisioning for the gateway's DynamoDB event log."""
