import os
import sys

# tests import the flat top-level scripts (e.g. `import download_dataset`)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
