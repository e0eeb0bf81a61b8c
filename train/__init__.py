"""Training for the six colorization networks: ``python -m train NETWORK --data PATH --out ROOT``.

``data`` reads images into memory, ``losses`` holds the objectives, ``recipes`` one plain-data recipe per
network (from the papers), ``engine`` the one training loop they all share, ``proposals`` the object crops
for the ParaColorizer foreground network.
"""
