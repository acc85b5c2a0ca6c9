/* The one place the UI library is imported from: Preact 10 with hooks, and htm tagged
 * templates instead of JSX (so there is no build step). See docs/webapp.md. */
export {
  html, render, h, Component, createContext, useState, useReducer, useEffect, useLayoutEffect, useRef,
  useMemo, useCallback, useContext,
} from "../vendor/htm-preact.module.js";
