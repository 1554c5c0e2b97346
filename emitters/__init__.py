"""Solved plan → launch files and commands, one small module per framework. Built by the emitters issue;
empty until then."""
