"""One TaskConfig per model, discovered by main.py: configs/<model>.py serves the model named <model>."""
