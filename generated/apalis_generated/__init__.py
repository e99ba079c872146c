"""Typed query functions generated from queries/*.sql by apalis_codegen."""
