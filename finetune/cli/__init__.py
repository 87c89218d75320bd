"""The command line: one module per command (its options and what it prints), and the error ladder they share."""
