// The page's global: the official AnalyticsBrowser class, nothing else (the test page loads it).
import { AnalyticsBrowser } from '@segment/analytics-next'
window.AnalyticsBrowser = AnalyticsBrowser
