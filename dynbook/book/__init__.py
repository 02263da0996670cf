"""The book's pipeline: what every chapter runs through, whatever its subject.

``params`` validates a chapter's parameters (one schema, profile defaults); ``record`` writes
what a run measured to JSON and glues it into the prose; ``claims`` and ``stats`` are the
claims protocol (declared rules, intervals, negative controls, verdicts); ``show`` renders
tables and sets the figure style; ``environment`` describes the machine; ``cli`` is the
``dynbook`` command (``list | run | book``).
"""
