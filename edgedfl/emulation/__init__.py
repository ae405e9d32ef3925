"""Emulation of a device fleet on one machine: node processes, a broker, a live view, reports."""
