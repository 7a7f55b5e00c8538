"""The lab firewall (the lab-firewall image): ``service.py`` runs there as one script.

Its image has python3-minimal and nothing of gpuhub but that file, so it imports only
the standard library (an import contract checks it).
"""
