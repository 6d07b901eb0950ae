import sys

from push.testing.serve import main

sys.exit(main())
