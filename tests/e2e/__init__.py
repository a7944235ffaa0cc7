"""End-to-end tests: the live agent in a namespace lab, scraped by a real Prometheus that alerts
through a real Alertmanager to a webhook (see `test_alerting`)."""
