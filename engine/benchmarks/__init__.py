"""`facechain bench`: runs the scripts in bench/, collects their figures and writes a report."""
