"""Query API URLs."""

urlpatterns: list = []
