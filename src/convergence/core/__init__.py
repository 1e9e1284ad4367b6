"""The ground floor every stage stands on: errors, the registries, atomic writes, leases
and the results store. Imports nothing from the stages above it."""
