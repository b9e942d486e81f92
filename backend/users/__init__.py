"""Accounts: the custom user model, identified by an email address, a mobile number, or both."""
