"""The operator console: a dashboard of every part of the deployment, `/health` and `/metrics`,
on its own listener (`custody dashboard`), apart from the merchant-facing API."""
